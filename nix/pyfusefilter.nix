# pyfusefilter from its PyPI source (nixpkgs does not package it): binary fuse filters, a C header
# compiled through cffi. peerix uses its C core (peerix/net/store_filter.py).
{
  lib,
  buildPythonPackage,
  fetchPypi,
  setuptools,
  cffi,
  xxhash,
}:
buildPythonPackage rec {
  pname = "pyfusefilter";
  version = "1.3.0";
  pyproject = true;
  src = fetchPypi {
    inherit pname version;
    hash = "sha256-XxNYKwrR5elC8XsaBqDbKOHHAsRFfqdElkKLGok0a8Q=";
  };
  build-system = [
    setuptools
    cffi
  ];
  dependencies = [
    cffi
    xxhash
  ];
  pythonImportsCheck = [ "pyfusefilter._xorfilter" ];
  meta = {
    description = "Binary fuse and xor filters for Python";
    homepage = "https://github.com/FastFilter/pyfusefilter";
    license = lib.licenses.asl20;
  };
}
