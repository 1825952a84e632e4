# The demo's closure: an "application" with a library and some data, as derivation outputs so
# that they need signatures. `seed` makes fresh paths on every run.
{ seed }:
let
  mk = import ./mk-derivation.nix seed;
  lib = mk "demo-lib-1.0" ''
    /bin/mkdir -p $out/lib
    /usr/bin/head -c 3000000 /dev/urandom > $out/lib/libdemo.so
  '';
  data = mk "demo-data-1.0" ''
    /bin/mkdir -p $out/share/demo
    for i in 1 2 3 4 5 6 7 8 9 10; do /usr/bin/head -c 400000 /dev/urandom > $out/share/demo/asset-$i; done
  '';
in mk "demo-app-1.0" ''
  /bin/mkdir -p $out/bin
  printf '#!/bin/sh\necho "demo app using ${lib} and ${data}"\n' > $out/bin/demo-app
  /bin/chmod +x $out/bin/demo-app
''
