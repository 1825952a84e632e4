# The demo's two applications: an editor and a game sharing a GUI library, as derivation outputs
# (so they need signatures). `seed` makes fresh paths on every run.
{ seed }:
let
  mk = import ./mk-derivation.nix seed;
  libgui = mk "demo-libgui-1.0" ''
    /bin/mkdir -p $out/lib
    /usr/bin/head -c 3000000 /dev/urandom > $out/lib/libgui.so
  '';
  editorData = mk "demo-editor-data-2.1" ''
    /bin/mkdir -p $out/share/editor
    for i in 1 2 3 4 5 6 7 8 9 10; do /usr/bin/head -c 400000 /dev/urandom > $out/share/editor/dictionary-$i; done
  '';
  gameAssets = mk "demo-game-assets-0.9" ''
    /bin/mkdir -p $out/share/game
    /usr/bin/head -c 6000000 /dev/urandom > $out/share/game/level-1.pak
  '';
  app = name: inputs: mk name ''
    /bin/mkdir -p $out/bin
    printf '#!/bin/sh\necho "${name} running with"\n' > $out/bin/run
    for input in ${toString inputs}; do printf 'echo "  %s"\n' "$input" >> $out/bin/run; done
    /bin/chmod +x $out/bin/run
  '';
in
{
  editor = app "demo-editor-2.1" [ libgui editorData ];
  game = app "demo-game-0.9" [ libgui gameAssets ];
}
