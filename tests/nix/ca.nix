# A content-addressed derivation (ca-derivations): its output path is known only once built, and
# other hosts find it through its realisation. `seed` gives each caller a fresh derivation.
{ seed ? "0" }:
derivation {
  name = "peerix-test-ca";
  inherit seed;
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "echo building peerix-test-ca ${seed}; echo ca ${seed} > $out" ];
  __contentAddressed = true;
  outputHashMode = "recursive";
  outputHashAlgo = "sha256";
}
