# A synthetic closure shaped like a desktop application's: a few large files, some medium
# ones, and many small paths full of small files; derivation outputs that reference each other.
{ seed ? "bench-1", smallPaths ? 276, scale ? 1 }:
let
  mk = import ../peerix/cli/mk-derivation.nix seed;
  mb = n: toString (n * scale * 1048576);
  large = map (i: mk "large-${toString i}" ''/usr/bin/head -c ${mb (builtins.elemAt [ 200 150 100 80 ] i)} /dev/urandom > $out'') [ 0 1 2 3 ];
  medium = builtins.genList (i: mk "medium-${toString i}" ''
    /bin/mkdir -p $out/lib
    /usr/bin/head -c ${mb (20 + 2 * i)} /dev/urandom | /usr/bin/split -b ${mb 8} - $out/lib/part-
  '') 20;
  # Small paths: ~1 MiB each in files of 1..64 KiB, as a share/ tree of icons, locales and scripts.
  small = builtins.genList (i: mk "small-${toString i}" ''
    /bin/mkdir -p $out/share/a $out/share/b $out/bin
    /usr/bin/head -c ${toString (393216 + 1021 * i)} /dev/urandom | /usr/bin/split -b ${toString (4096 + 37 * i)} - $out/share/a/f-
    /usr/bin/head -c ${toString (655360 + 997 * i)} /dev/urandom | /usr/bin/split -b ${toString (16384 + 61 * i)} - $out/share/b/g-
    echo '#!/bin/sh' > $out/bin/tool-${toString i}
    /bin/chmod +x $out/bin/tool-${toString i}
    /bin/ln -s ../share/a $out/bin/data
  '') smallPaths;
  deps = large ++ medium ++ small;
in mk "bench-app" ''
  /bin/mkdir -p $out
  echo "${builtins.concatStringsSep " " (map toString deps)}" > $out/deps
''
