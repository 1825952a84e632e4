# peerix and peerix-tracker, built from pyproject.toml.
{
  lib,
  python3Packages,
}:
let
  project = (lib.importTOML ../pyproject.toml).project;
in
python3Packages.buildPythonApplication {
  pname = project.name;
  inherit (project) version;
  pyproject = true;
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../pyproject.toml
      ../README.md
      ../peerix
      ../tracker
    ];
  };
  build-system = [ python3Packages.setuptools ];
  dependencies = with python3Packages; [
    aiosqlite
    asyncpg
    httptools
    httpx
    iroh
    prometheus-client
    pyfusefilter
    pynacl
    starlette
    uvicorn
    zstandard
  ];
  # The suite drives real Nix stores, network namespaces and Chromium, which the build sandbox
  # has none of: it runs with `scripts/dev test`, and the flake's `checks` run the NixOS VM test.
  doCheck = false;
  pythonImportsCheck = [
    "peerix.cli.main"
    "tracker.cli"
  ];
  meta = {
    inherit (project) description;
    homepage = "https://github.com/peerix/peerix";
    license = lib.licenses.mit;
    mainProgram = "peerix";
    platforms = lib.platforms.linux;
  };
}
