# A derivation whose builder prints a marker line into its build log.
{ seed ? "0" }:
import ../../peerix/cli/mk-derivation.nix seed "peerix-test-logged" ''
  echo "peerix build log marker ${seed}"
  echo ${seed} > $out
''
