# Hex dump of random bytes: compresses about 2.5 to 3 times, like text and binaries do, not endlessly
# like zeros. MEGABYTES of random input make about three times as many bytes of NAR.
{ seed ? "0", megabytes ? "10" }:
import ../../peerix/cli/mk-derivation.nix seed "peerix-test-compressible-${megabytes}M" ''
  /usr/bin/head -c ${megabytes}M /dev/urandom | /usr/bin/od -An -tx1 -v > $out
''
