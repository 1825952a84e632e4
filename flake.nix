{
  description = "peerix: a peer-to-peer binary cache for Nix";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f (nixpkgs.legacyPackages.${system}.extend self.overlays.default));
    in
    {
      overlays.default = final: prev: {
        pythonPackagesExtensions = prev.pythonPackagesExtensions ++ [
          (pyfinal: pyprev: {
            # Only where nixpkgs lacks it: a packaged iroh wins.
            iroh = pyprev.iroh or (pyfinal.callPackage ./nix/iroh.nix { });
            pyfusefilter = pyprev.pyfusefilter or (pyfinal.callPackage ./nix/pyfusefilter.nix { });
          })
        ];
        peerix = final.callPackage ./nix/package.nix { };
      };

      packages = forAllSystems (pkgs: {
        inherit (pkgs) peerix;
        default = pkgs.peerix;
      });

      apps = forAllSystems (pkgs: {
        peerix = {
          type = "app";
          program = "${pkgs.peerix}/bin/peerix";
          meta.description = "the peerix daemon and its tools";
        };
        peerix-tracker = {
          type = "app";
          program = "${pkgs.peerix}/bin/peerix-tracker";
          meta.description = "the peerix tracker";
        };
        default = self.apps.${pkgs.stdenv.hostPlatform.system}.peerix;
      });

      nixosModules.peerix =
        { lib, pkgs, ... }:
        {
          imports = [ ./module.nix ];
          services.peerix.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.peerix;
          services.peerix-tracker.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.peerix;
        };
      nixosModules.default = self.nixosModules.peerix;

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = [
            (pkgs.python3.withPackages (
              ps: pkgs.peerix.dependencies ++ [
                ps.pytest
                ps.pytest-asyncio
              ]
            ))
            pkgs.nix
            pkgs.nginx
            pkgs.curl
            pkgs.iproute2
            pkgs.chromium
            pkgs.shellcheck
          ];
        };
      });

      checks = forAllSystems (pkgs: {
        vm = pkgs.testers.runNixOSTest (import ./nix/vm-test.nix { inherit self; });
      });
    };
}
