# NixOS module: `services.peerix.enable = true` runs the daemon and makes the local Nix use it;
# `services.peerix-tracker.enable = true` runs a tracker.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib)
    literalExpression
    mkEnableOption
    mkIf
    mkMerge
    mkOption
    types
    ;
  cfg = config.services.peerix;
  tcfg = config.services.peerix-tracker;
  toml = pkgs.formats.toml { };

  # Settings the dedicated options own; the free-form `settings` must not fight them.
  owned = {
    listen = "listen/port";
    tracker = "trackerUrls";
    lan = "lan.enable";
    lan_interface = "lan.interface";
    static_peers = "staticPeers";
    trusted_public_keys = "trustedPublicKeys";
    upstream = "upstreamCache";
    priority = "priority";
    iroh_listen = "irohPort";
    fast_path = "fastPath.enable";
    fast_path_listen = "fastPath.port";
    exclude = "exclude";
    pull_through = "pullThrough";
    sign_key_file = "privateKeyFile";
    state_dir = "(fixed: /var/lib/peerix)";
    tracker_token_file = "trackerTokenFile";
    tracker_ca_file = "trackerCaFile";
    fleet_token_file = "fleetTokenFile";
  };
  trackerOwned = {
    listen = "services.peerix-tracker.listen/port";
    db = "services.peerix-tracker.database (dataDir for SQLite)";
    db_password_file = "services.peerix-tracker.database.passwordFile";
    tls_cert = "services.peerix-tracker.tls.certFile";
    tls_key = "services.peerix-tracker.tls.keyFile";
  };

  # Secrets reach the services as systemd credentials (their dynamic users could not read root's files):
  # each credential is given to its flag as `%d/NAME`; those whose file is null are left out.
  secrets = lib.filterAttrs (_: secret: secret.file != null);
  daemonSecrets = secrets {
    tracker-token = { file = cfg.trackerTokenFile; flag = "--tracker-token-file"; };
    fleet-token = { file = cfg.fleetTokenFile; flag = "--fleet-token-file"; };
  };
  trackerSecrets = secrets {
    db-password = { file = db.passwordFile; flag = "--db-password-file"; };
    tls-cert = { file = tcfg.tls.certFile; flag = "--tls-cert"; };
    tls-key = { file = tcfg.tls.keyFile; flag = "--tls-key"; };
  };
  credentialArgs = given: lib.concatLists (lib.mapAttrsToList (name: secret: [ secret.flag "%d/${name}" ]) given);
  loadCredentials = given: lib.mapAttrsToList (name: secret: "${name}:${secret.file}") given;
  inStore = file: file != null && lib.hasPrefix builtins.storeDir (toString file);

  # The tracker's database: a file in dataDir, a local PostgreSQL reached as the service's own user over
  # the socket (peer authentication: no password anywhere), or a URL whose password comes in a file.
  db = tcfg.database;
  localDatabase = db.type == "postgresql" && db.createLocally;
  trackerName = "peerix-tracker"; # the service, its dynamic user, and with createLocally the role and database
  trackerDb =
    if db.type == "sqlite" then
      "${tcfg.dataDir}/tracker.sqlite"
    else if db.createLocally then
      "postgresql://${trackerName}@/${trackerName}?host=/run/postgresql"
    else
      db.url;

  keyDir = "/var/lib/peerix-key";
  generatedKey = "${keyDir}/host.key";
  keyFile = if cfg.privateKeyFile != null then cfg.privateKeyFile else generatedKey;
  bracket = host: if lib.hasInfix ":" host then "[${host}]" else host;

  daemonSettings = cfg.settings // {
    listen = "${bracket cfg.listen}:${toString cfg.port}";
    tracker = if cfg.trackerUrls == [ ] then "none" else cfg.trackerUrls;
    lan = cfg.lan.enable;
    static_peers = cfg.staticPeers;
    trusted_public_keys = cfg.trustedPublicKeys;
    upstream = if cfg.upstreamCache == null then "none" else cfg.upstreamCache;
    priority = cfg.priority;
    iroh_listen = "0.0.0.0:${toString cfg.irohPort}";
    fast_path = cfg.fastPath.enable;
    fast_path_listen = "0.0.0.0:${toString cfg.fastPath.port}";
    exclude = cfg.exclude;
    pull_through = cfg.pullThrough;
  } // lib.optionalAttrs (cfg.lan.interface != null) { lan_interface = cfg.lan.interface; }
    // lib.optionalAttrs (cfg.trackerCaFile != null) { tracker_ca_file = cfg.trackerCaFile; };

  hardening = {
    DynamicUser = true;
    NoNewPrivileges = true;
    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateTmp = true;
    PrivateDevices = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    ProtectProc = "invisible";
    ProcSubset = "pid";
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    RemoveIPC = true;
    # AF_NETLINK: iroh lists interfaces to learn its direct addresses.
    RestrictAddressFamilies = [
      "AF_INET"
      "AF_INET6"
      "AF_UNIX"
      "AF_NETLINK"
    ];
    CapabilityBoundingSet = "";
    AmbientCapabilities = "";
    SystemCallArchitectures = "native";
    SystemCallFilter = [
      "@system-service"
      "~@privileged"
      "~@resources"
    ];
    UMask = "0077";
    # No MemoryDenyWriteExecute: ctypes callbacks (iroh's protocol handlers) need libffi closures.
  };
in
{
  imports = [
    (lib.mkChangedOptionModule [ "services" "peerix" "trackerUrl" ] [ "services" "peerix" "trackerUrls" ] (
      config: lib.toList config.services.peerix.trackerUrl
    ))
  ];

  options.services.peerix = {
    enable = mkEnableOption "the peerix daemon, a peer-to-peer binary cache that the local Nix substitutes from";

    package = mkOption {
      type = types.package;
      default = pkgs.peerix;
      defaultText = literalExpression "pkgs.peerix";
      description = "The peerix package (the flake's module sets it to the flake's build).";
    };

    listen = mkOption {
      type = types.str;
      default = "127.0.0.1";
      description = "Address of the HTTP substituter the local Nix talks to. Keep it on loopback: the daemon fetches from the peer network on behalf of whoever asks.";
    };

    port = mkOption {
      type = types.port;
      default = 12304;
      description = "TCP port of the HTTP substituter.";
    };

    irohPort = mkOption {
      type = types.port;
      default = 12305;
      description = "UDP port of the iroh endpoint that peers connect to.";
    };

    fastPath = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "Take nearby peers' NAR bytes over plain HTTP (several times iroh's rate; asked for over iroh and checked against the NarHash alike; only from this machine or private networks), and serve ours so to peers holding a ticket from the iroh side.";
      };
      port = mkOption {
        type = types.port;
        default = 12306;
        description = "TCP port of the fast-path listener.";
      };
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the iroh port (UDP `irohPort`), with LAN discovery its UDP port 12304, and with the fast path its TCP port.";
    };

    trackerUrls = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [
        "http://tracker-1.example.org:12305"
        "http://tracker-2.example.org:12305"
      ];
      description = "URLs of the tracker: several are replicas of one tracker, used one at a time, the next when one fails. Empty: no tracker, peers are found on the LAN and by `staticPeers` only.";
    };

    lan = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "Find peers on the local network (UDP multicast and broadcast on port 12304).";
      };
      interface = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Interface to announce on; null: the interface of the default route.";
      };
    };

    staticPeers = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "10.100.0.2" "builder.vpn:12304" ];
      description = "Peers reached by unicast LAN discovery, for VPNs (Tailscale, WireGuard) that carry no broadcast.";
    };

    privateKeyFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/keys/peerix-host.key";
      description = ''
        The host's ed25519 key in Nix's secret key format (`peerix keygen`): it signs what peerix
        hands to the local Nix, is the host's peer id and signs its tracker requests. Null: one is
        generated at activation in ${keyDir} (root-owned; the service reads it as a credential).
        Never a path literal: that would copy the secret into the world-readable store.
      '';
    };

    trackerTokenFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/keys/peerix-tracker.token";
      description = "File holding the network token of a tracker with token membership, read by the service as a systemd credential. Never a path literal: that would copy the secret into the world-readable store.";
    };

    trackerCaFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/etc/peerix/fleet-ca.pem";
      description = "CA certificate(s) (PEM) that an https tracker's certificate must chain to; null: the system's CAs.";
    };

    fleetTokenFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/keys/peerix-fleet.token";
      description = ''
        File of fleet tokens, one a line (16 characters or more; `peerix-tracker token FILE` makes one),
        read by the service as a systemd credential. LAN packets then prove the first, packets that prove
        none are dropped, and the daemon answers its fleet only (unless `settings.peers = "any"`). Never
        a path literal: that would copy the secret into the world-readable store.
      '';
    };

    trustedPublicKeys = mkOption {
      type = types.listOf types.str;
      default = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
      description = "Keys whose signatures make a path from a peer acceptable, and a local path shareable with peers.";
    };

    exclude = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "*-secrets*" "*-source" ];
      description = "Glob patterns on store path names (`<hash>-<name>`): matching paths are never announced and never served to peers or over /store/, whatever the serving policy says.";
    };

    upstreamCache = mkOption {
      type = types.nullOr types.str;
      default = "https://cache.nixos.org";
      description = "Binary cache that vouches for unsigned paths by their NarHash, and that paths no peer holds are pulled through from; null: neither.";
    };

    pullThrough = mkOption {
      type = types.bool;
      default = true;
      description = "Fetch a path no peer holds from the upstream cache, stream it to Nix and hold it for the fleet (one download per path for the fleet with a tracker or LAN peers).";
    };

    priority = mkOption {
      type = types.int;
      default = 30;
      description = "Priority of the peerix substituter (lower wins; cache.nixos.org uses 40).";
    };

    settings = mkOption {
      type = toml.type;
      default = { };
      example = {
        nar_cache_size = "4G";
        serve = "signed";
        connect_timeout = 2;
      };
      description = "Further daemon settings, rendered to its TOML configuration (keys as `peerix serve --help` lists them, with underscores).";
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "Extra command line arguments for `peerix serve`; they win over the configuration file.";
    };
  };

  options.services.peerix-tracker = {
    enable = mkEnableOption "the peerix tracker, the registry of which peers hold which store paths";

    package = mkOption {
      type = types.package;
      default = pkgs.peerix;
      defaultText = literalExpression "pkgs.peerix";
      description = "The package providing `peerix-tracker`.";
    };

    listen = mkOption {
      type = types.str;
      default = "0.0.0.0";
      description = "Address the tracker listens on.";
    };

    port = mkOption {
      type = types.port;
      default = 12305;
      description = "TCP port of the tracker.";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the tracker's TCP port.";
    };

    dataDir = mkOption {
      type = types.str;
      default = "/var/lib/peerix-tracker";
      description = "Directory of the tracker's SQLite database; under /var/lib (a systemd StateDirectory of the service's dynamic user).";
    };

    database = {
      type = mkOption {
        type = types.enum [
          "sqlite"
          "postgresql"
        ];
        default = "sqlite";
        description = "Where the tracker keeps its index: an SQLite file in `dataDir` (one tracker process), or PostgreSQL, which several trackers (replicas) can share.";
      };
      createLocally = mkOption {
        type = types.bool;
        default = true;
        description = "With PostgreSQL: run it on this host (`services.postgresql`) with a database and a role named ${trackerName}, reached over the unix socket with peer authentication, so no password exists. False: use `url`.";
      };
      url = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "postgresql://peerix-tracker@db.example.org:5432/peerix-tracker";
        description = "With PostgreSQL and `createLocally = false`: the database's URL, without a password (`?host=/run/postgresql` for a unix socket).";
      };
      passwordFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/run/secrets/peerix-tracker-db";
        description = "With `url`: a file holding the database password, read by the service as a systemd credential. Never a path literal: that would copy the secret into the world-readable store.";
      };
    };

    tls = {
      certFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/var/lib/acme/tracker.example.org/fullchain.pem";
        description = "Certificate chain (PEM) to serve HTTPS with, beside `keyFile`; read as a systemd credential. Null: plain HTTP (for a tracker behind a TLS proxy, or on loopback).";
      };
      keyFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/var/lib/acme/tracker.example.org/key.pem";
        description = "The certificate's private key (PEM), read as a systemd credential. Never a path literal: that would copy the key into the world-readable store.";
      };
    };

    settings = mkOption {
      type = toml.type;
      default = { };
      example = {
        membership = "token";
        token_file = "/run/credentials/peerix-tracker.service/tokens";
        offline_after = "5m";
      };
      description = "Tracker settings, rendered to its TOML configuration (keys as `peerix-tracker serve --help` lists them).";
    };
  };

  config = mkMerge [
    (mkIf cfg.enable {
      assertions =
        [
          {
            assertion = cfg.trackerUrls != [ ] || cfg.lan.enable || cfg.staticPeers != [ ];
            message = "services.peerix: with no trackerUrls, lan.enable = false and no staticPeers, peerix cannot find any peer.";
          }
          {
            assertion = cfg.privateKeyFile == null || !lib.hasPrefix builtins.storeDir (toString cfg.privateKeyFile);
            message = "services.peerix.privateKeyFile must not be in the Nix store: anyone could read the key there.";
          }
          {
            assertion = !(cfg.settings ? accept && lib.elem cfg.settings.accept [ "upstream" "signature-and-upstream" ]) || cfg.upstreamCache != null;
            message = "services.peerix: settings.accept = \"${cfg.settings.accept or ""}\" needs upstreamCache.";
          }
          {
            assertion = !inStore cfg.trackerTokenFile && !inStore cfg.fleetTokenFile;
            message = "services.peerix.trackerTokenFile and fleetTokenFile must not be in the Nix store: anyone could read the tokens there.";
          }
        ]
        ++ lib.mapAttrsToList (key: option: {
          assertion = !(cfg.settings ? ${key});
          message = "services.peerix.settings.${key} is set by services.peerix.${option}; set that instead.";
        }) owned;

      # The key is made by root at activation, before nix-daemon reads nix.conf: the daemon's
      # public key is trusted through an include that only root can write.
      system.activationScripts.peerix-key = {
        text = ''
          install -d -m 0700 -o root -g root ${keyDir}
          ${lib.optionalString (cfg.privateKeyFile == null) ''
            if [ ! -e ${generatedKey} ]; then
              ${cfg.package}/bin/peerix keygen ${config.networking.hostName}-peerix-1 \
                --secret-file ${generatedKey} --public-file ${keyDir}/host.pub >/dev/null
            fi
          ''}
          if [ -r ${keyFile} ]; then
            printf 'extra-trusted-public-keys = %s\n' "$(${cfg.package}/bin/peerix public-key ${keyFile})" \
              > ${keyDir}/nix.conf.tmp && mv ${keyDir}/nix.conf.tmp ${keyDir}/nix.conf
            chmod 0644 ${keyDir}/nix.conf
          fi
        '';
        deps = [ "users" ];
      };

      nix.settings = {
        extra-substituters = [ "http://${bracket cfg.listen}:${toString cfg.port}" ];
        # An absent or slow peerix must never break a build: fail fast, then fall back.
        connect-timeout = lib.mkDefault 5;
        fallback = lib.mkDefault true;
      };
      nix.extraOptions = "!include ${keyDir}/nix.conf";

      networking.firewall = mkIf cfg.openFirewall {
        allowedUDPPorts = [ cfg.irohPort ] ++ lib.optional cfg.lan.enable 12304;
        allowedTCPPorts = lib.optional cfg.fastPath.enable cfg.fastPath.port;
      };

      systemd.services.peerix = {
        description = "peerix, a peer-to-peer binary cache for Nix";
        documentation = [ "https://github.com/peerix/peerix" ];
        wantedBy = [ "multi-user.target" ];
        wants = [ "network-online.target" ];
        after = [ "network-online.target" ];
        serviceConfig = hardening // {
          ExecStart = lib.escapeShellArgs (
            [
              "${cfg.package}/bin/peerix"
              "serve"
              "--config"
              (toml.generate "peerix.toml" daemonSettings)
              "--state-dir"
              "/var/lib/peerix"
              "--sign-key-file"
              "%d/host-key"
            ]
            ++ credentialArgs daemonSecrets
            ++ cfg.extraArgs
          );
          LoadCredential = [ "host-key:${keyFile}" ] ++ loadCredentials daemonSecrets;
          StateDirectory = "peerix";
          StateDirectoryMode = "0700";
          # Read-only access to the store and its database; the rest of the file system is hidden.
          ReadOnlyPaths = [
            "/nix/store"
            "/nix/var/nix/db"
          ];
          Type = "notify";
          NotifyAccess = "main";
          WatchdogSec = 60;
          TimeoutStopSec = 20; # in-flight NARs get 10 s, then it deregisters and closes
          Restart = "on-failure";
          RestartSec = 5;
        };
      };
    })

    (mkIf tcfg.enable {
      assertions =
        [
          {
            assertion = lib.hasPrefix "/var/lib/" tcfg.dataDir;
            message = "services.peerix-tracker.dataDir must be under /var/lib: it is the service's StateDirectory.";
          }
          {
            assertion = db.type == "postgresql" || (db.url == null && db.passwordFile == null);
            message = "services.peerix-tracker.database.url and passwordFile are for database.type = \"postgresql\".";
          }
          {
            assertion = db.type == "sqlite" || db.createLocally != (db.url != null);
            message = "services.peerix-tracker.database: give a url, or createLocally = true (the default), not both.";
          }
          {
            assertion = !localDatabase || db.passwordFile == null;
            message = "services.peerix-tracker.database.passwordFile: createLocally uses peer authentication over the socket, without a password.";
          }
          {
            assertion = db.url == null || builtins.match "[a-z]+://[^@/]*:[^@/]*@.*" db.url == null;
            message = "services.peerix-tracker.database.url must not hold a password (it would land in the store): use passwordFile.";
          }
          {
            assertion = !inStore db.passwordFile;
            message = "services.peerix-tracker.database.passwordFile must not be in the Nix store: anyone could read it there.";
          }
          {
            assertion = (tcfg.tls.certFile == null) == (tcfg.tls.keyFile == null);
            message = "services.peerix-tracker.tls: give both certFile and keyFile, or neither.";
          }
          {
            assertion = !inStore tcfg.tls.keyFile;
            message = "services.peerix-tracker.tls.keyFile must not be in the Nix store: anyone could read the key there.";
          }
        ]
        ++ lib.mapAttrsToList (key: option: {
          assertion = !(tcfg.settings ? ${key});
          message = "services.peerix-tracker.settings.${key} is set by ${option}; set that instead.";
        }) trackerOwned;

      networking.firewall = mkIf tcfg.openFirewall { allowedTCPPorts = [ tcfg.port ]; };

      services.postgresql = mkIf localDatabase {
        enable = true;
        ensureDatabases = [ trackerName ];
        ensureUsers = [
          {
            name = trackerName;
            ensureDBOwnership = true;
          }
        ];
        # The service's own (dynamic) user logs in as the role of the same name over the socket.
        authentication = lib.mkBefore "local ${trackerName} ${trackerName} peer";
      };

      systemd.services.peerix-tracker = {
        description = "peerix tracker";
        wantedBy = [ "multi-user.target" ];
        wants = [ "network-online.target" ];
        requires = lib.optional localDatabase "postgresql.service";
        after = [ "network-online.target" ] ++ lib.optional localDatabase "postgresql.service";
        serviceConfig = hardening // {
          ExecStart = lib.escapeShellArgs (
            [
              "${tcfg.package}/bin/peerix-tracker"
              "serve"
              "--config"
              (toml.generate "peerix-tracker.toml" (
                tcfg.settings
                // {
                  listen = "${bracket tcfg.listen}:${toString tcfg.port}";
                  db = trackerDb;
                }
              ))
            ]
            ++ credentialArgs trackerSecrets
          );
          LoadCredential = loadCredentials trackerSecrets;
          StateDirectory = lib.removePrefix "/var/lib/" tcfg.dataDir;
          StateDirectoryMode = "0700";
          RestrictAddressFamilies = [
            "AF_INET"
            "AF_INET6"
            "AF_UNIX"
          ];
          Restart = "on-failure";
          RestartSec = 5;
        };
      };
    })
  ];
}
