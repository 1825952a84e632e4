# What a fleet rolls out at once: a closure with one large path (random, so compression cannot hide
# its size) and a few small ones.
{ seed ? "0", megabytes ? "48" }:
let
  mk = import ../../peerix/cli/mk-derivation.nix seed;
  big = mk "peerix-rollout-big" ''
    /usr/bin/head -c ${megabytes}M /dev/urandom > $out
  '';
  small = n: mk "peerix-rollout-small-${toString n}" ''
    /bin/mkdir -p $out/share
    /usr/bin/head -c 200000 /dev/urandom > $out/share/data
    echo ${big} > $out/share/needs
  '';
in mk "peerix-rollout-top" ''
  /bin/mkdir -p $out
  echo ${small 1} ${small 2} ${small 3} > $out/closure
''
