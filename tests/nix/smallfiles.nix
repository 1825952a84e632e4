# Thousands of small files of odd sizes (about 5 MB of NAR): split transfers cut through them.
{ seed ? "0" }:
import ../../peerix/cli/mk-derivation.nix seed "peerix-test-smallfiles" ''
  /usr/bin/mkdir -p $out/a/b
  i=0
  while [ $i -lt 2500 ]; do
    /usr/bin/head -c $(( (i * 7919) % 3001 )) /dev/urandom > $out/a/f$i
    i=$((i + 1))
  done
  /usr/bin/head -c 1000003 /dev/urandom > $out/a/b/odd
''
