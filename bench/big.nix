# One large random file, as a store path: a NAR the size of a big toolchain's.
{ seed ? "bench-big", megabytes ? "1024" }:
import ../peerix/cli/mk-derivation.nix seed "bench-big-${megabytes}M" ''
  /usr/bin/head -c ${megabytes}M /dev/urandom > $out
''
