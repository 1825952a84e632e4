# iroh's Python binding from its PyPI wheel (nixpkgs does not package it): a prebuilt Rust library
# loaded with ctypes, patched to find libgcc_s in the store.
{
  lib,
  stdenv,
  buildPythonPackage,
  fetchPypi,
  autoPatchelfHook,
}:
let
  wheels = {
    x86_64-linux = {
      platform = "manylinux_2_28_x86_64";
      hash = "sha256-YSIq3IF0UAnzTKH+1CYz9srIZcntNaRwHrjAF0y4OZo=";
    };
    aarch64-linux = {
      platform = "manylinux_2_28_aarch64";
      hash = "sha256-BJ7vggpXEAk8sMydZF2gD2nfv1sKx2R3QdohaLedDBA=";
    };
  };
  wheel =
    wheels.${stdenv.hostPlatform.system}
      or (throw "iroh: no wheel for ${stdenv.hostPlatform.system}; peerix supports ${toString (lib.attrNames wheels)}");
in
buildPythonPackage rec {
  pname = "iroh";
  version = "1.2.0";
  format = "wheel";
  src = fetchPypi {
    inherit pname version format;
    dist = "py3";
    python = "py3";
    abi = "none";
    inherit (wheel) platform hash;
  };
  nativeBuildInputs = [ autoPatchelfHook ];
  buildInputs = [ stdenv.cc.cc.lib ];
  pythonImportsCheck = [ "iroh" ];
  meta = {
    description = "Python bindings for iroh, peer-to-peer QUIC connections by public key";
    homepage = "https://iroh.computer";
    license = with lib.licenses; [ asl20 mit ];
    sourceProvenance = [ lib.sourceTypes.binaryNativeCode ];
    platforms = lib.attrNames wheels;
  };
}
