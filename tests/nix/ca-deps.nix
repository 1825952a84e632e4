# A content-addressed derivation with every kind of input derivation: another content-addressed one,
# an input-addressed one and a fixed-output one (whose hash is known in advance).
{ seed ? "0" }:
let
  sh = name: script: extra: derivation ({
    inherit name seed;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
  } // extra);
  ca = { __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256"; };
  floating = sh "peerix-test-ca-dep" "echo dep ${seed} > $out" ca;
  addressed = sh "peerix-test-ia-dep" "echo ia ${seed} > $out" { };
  fixed = sh "peerix-test-fixed" "echo fixed > $out" {
    outputHashMode = "flat"; outputHashAlgo = "sha256";
    outputHash = "0c3071418e6356e614898c84ed064ca95e88551bc0811b534bdf1952ecdae534";
  };
in sh "peerix-test-ca-top" "/bin/cat ${floating} ${addressed} ${fixed} > $out" ca
