# Two hosts and a tracker: a path built on `a` is substituted on `b` through b's peerix, which
# finds it with the tracker and fetches it from a over iroh. LAN discovery is off so that the
# tracker path is what is tested; the VMs have no internet, so relays, discovery and upstream are off.
{ self }:
let
  # A key pair for this test only: the "cluster" key that signs what a shares.
  clusterPublic = "peerix-vm-test-cluster-1:fDdEjtQnkkSGhdACsdeD3/5U/lOhHp2zrN86Ae4HYmU=";
  clusterSecret = "peerix-vm-test-cluster-1:GQlhXujCVEzZdC9PSXppmy45JZK42d01mInnA6+IrvJ8N0SO1CeSRIaF0AKx14Pf/lT+U6EenbOs3zoB7gdiZQ==";
  host =
    { lib, ... }:
    {
      imports = [ self.nixosModules.peerix ];
      services.peerix = {
        enable = true;
        trackerUrls = [ "http://tracker:12305" ];
        lan.enable = false;
        openFirewall = true;
        trustedPublicKeys = [ clusterPublic ];
        upstreamCache = null;
        settings = {
          relays = false;
          discovery = false;
        };
      };
      nix.settings.substituters = lib.mkForce [ ];
      environment.etc."peerix-test/cluster.sec".text = clusterSecret;
    };
in
{
  name = "peerix";
  nodes = {
    tracker = {
      imports = [ self.nixosModules.peerix ];
      services.peerix-tracker = {
        enable = true;
        openFirewall = true;
      };
    };
    a = host;
    b = host;
  };
  testScript = ''
    start_all()
    tracker.wait_for_unit("peerix-tracker.service")
    tracker.wait_for_open_port(12305)
    for machine in (a, b):
        machine.wait_for_unit("peerix.service")
        machine.wait_for_open_port(12304)
        machine.succeed("grep -q extra-trusted-public-keys /var/lib/peerix-key/nix.conf")

    path = a.succeed(
        "nix-build --no-out-link -E 'derivation { name = \"peerix-vm-test\"; "
        "system = builtins.currentSystem; builder = \"/bin/sh\"; "
        "args = [ \"-c\" \"echo shared by peerix > $out\" ]; }'"
    ).strip()
    a.succeed(f"nix store sign --key-file /etc/peerix-test/cluster.sec {path}")
    b.fail(f"test -e {path}")

    hash_part = path.removeprefix("/nix/store/")[:32]
    b.wait_until_succeeds(f"curl -sf http://127.0.0.1:12304/{hash_part}.narinfo", timeout=90)
    b.succeed(f"nix-store --realise {path}")
    b.succeed(f"grep -q 'shared by peerix' {path}")
    b.succeed(f"nix store verify --sigs-needed 1 {path}")
    a.succeed("journalctl -u peerix | grep -q 'served nar'")
    import json
    peers = json.loads(tracker.succeed("curl -sf http://127.0.0.1:12305/api/v1/peers"))["peers"]
    assert sum(peer["online"] for peer in peers) == 2, peers
  '';
}
