# Overlapping closures for the soak (tests/soak.py): each top path needs a common base (200 small files),
# two of four shared 4 MiB libraries and a payload of its own (1 to 40 MiB; the 40 MiB one is fetched
# from several peers at once), so hosts that hold different closures still hold much of each other's.
# Builds a list: one top path per closure.
{ seed ? "soak-1", closures ? 8 }:
let
  mk = import ../../peerix/cli/mk-derivation.nix seed;
  sizes = [ 1 40 2 4 6 8 12 16 ];  # MiB, payload i takes sizes[i mod 8]
  base = mk "soak-base" ''
    /bin/mkdir -p $out/share
    i=0
    while [ $i -lt 200 ]; do
      /usr/bin/head -c $(( (i * 7919) % 4001 )) /dev/urandom > $out/share/f$i
      i=$((i + 1))
    done
  '';
  shared = builtins.genList (i: mk "soak-shared-${toString i}" ''
    /bin/mkdir -p $out/lib
    /usr/bin/head -c 4194304 /dev/urandom > $out/lib/libshared.so
    echo ${base} > $out/lib/needs
  '') 4;
  payload = i: mk "soak-payload-${toString i}" ''
    /bin/mkdir -p $out
    /usr/bin/head -c ${toString (builtins.elemAt sizes (i - i / 8 * 8) * 1048576)} /dev/urandom > $out/data
    echo ${base} > $out/needs
  '';
  top = i: mk "soak-closure-${toString i}" ''
    /bin/mkdir -p $out
    echo ${builtins.elemAt shared (i - i / 4 * 4)} ${builtins.elemAt shared ((i + 1) - (i + 1) / 4 * 4)} \
      ${payload i} > $out/needs
  '';
in builtins.genList top closures
