# A derivation built by /bin/sh with the host's coreutils (absolute paths: builders have no
# PATH), seeded so each caller can ask for fresh store paths. Used by the demo, tests and bench.
seed: name: script: derivation {
  inherit name seed;
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" script ];
}
