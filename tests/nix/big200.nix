import ./big.nix { megabytes = "200"; }
