# One large file: big enough that a transfer outlives the socket buffers, so aborts are observable.
{ seed ? "0", megabytes ? "64" }:
import ../../peerix/cli/mk-derivation.nix seed "peerix-test-big-${megabytes}M" ''
  /usr/bin/head -c ${megabytes}M /dev/urandom > $out
''
