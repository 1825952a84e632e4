# A small closure of derivation outputs (not `nix-store --add` paths, which are content-addressed
# and need no signature) with the file types a NAR can hold. `seed` gives each caller fresh paths.
{ seed ? "0" }:
let
  mk = import ../../peerix/cli/mk-derivation.nix seed;
  lib = mk "peerix-test-lib" ''
    /bin/mkdir -p $out/lib $out/share/empty-dir "$out/share/with space"
    echo "libfoo ${seed}" > $out/lib/libfoo.so.1
    /bin/ln -s libfoo.so.1 $out/lib/libfoo.so
    /bin/ln -s ../lib $out/share/lib-dir-link
    /bin/ln -s /nonexistent/target $out/share/dangling
    : > $out/share/empty-file
    echo "ünïcödé" > "$out/share/with space/ünïcödé name.txt"
  '';
  data = mk "peerix-test-data" ''
    /usr/bin/head -c 3000000 /dev/zero > $out  # over one chunk: sent zero-copy
  '';
  app = mk "peerix-test-app" ''
    /bin/mkdir -p $out/bin
    echo '#!/bin/sh' > $out/bin/app
    echo "echo ${lib} ${data}" >> $out/bin/app
    /bin/chmod +x $out/bin/app
  '';
in app
