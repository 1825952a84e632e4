# Just enough of nixpkgs' lib to read module.nix offline: its option declarations (types become their
# names, options plain attribute sets), and `evalModule`, which evaluates its `config` for given settings
# over the options' defaults. Priorities (mkDefault, mkBefore, ...) are dropped and definitions merged as
# the module system would when nothing conflicts; `imports` stay unevaluated.
rec {
  mkOption = attrs: attrs // { _isOption = true; };
  mkEnableOption = name: mkOption {
    type = types.bool;
    default = false;
    description = "Whether to enable ${name}.";
  };
  literalExpression = text: { _literal = text; };
  types = {
    bool = "bool";
    str = "str";
    int = "int";
    port = "port";
    package = "package";
    nullOr = t: "null or ${t}";
    listOf = t: "list of ${t}";
    enum = values: "one of ${builtins.concatStringsSep ", " (map (value: ''"${value}"'') values)}";
  };

  mkIf = condition: content: { _type = "if"; inherit condition content; };
  mkMerge = contents: { _type = "merge"; inherit contents; };
  mkDefault = content: { _type = "override"; inherit content; };
  mkBefore = mkDefault;
  mkChangedOptionModule = from: to: change: { };
  optional = condition: value: if condition then [ value ] else [ ];
  optionals = condition: values: if condition then values else [ ];
  optionalString = condition: text: if condition then text else "";
  optionalAttrs = condition: set: if condition then set else { };
  toList = value: if builtins.isList value then value else [ value ];
  elem = builtins.elem;
  hasPrefix = prefix: text: builtins.substring 0 (builtins.stringLength prefix) text == prefix;
  removePrefix =
    prefix: text:
    if hasPrefix prefix text then
      builtins.substring (builtins.stringLength prefix) (builtins.stringLength text) text
    else
      text;
  hasInfix = infix: text: builtins.match ".*${infix}.*" text != null;
  mapAttrsToList = f: set: map (name: f name set.${name}) (builtins.attrNames set);
  filterAttrs = keep: set: builtins.removeAttrs set (builtins.filter (name: !keep name set.${name}) (builtins.attrNames set));
  concatLists = builtins.concatLists;
  escapeShellArg = arg: "'${builtins.replaceStrings [ "'" ] [ "'\\''" ] (toString arg)}'";
  escapeShellArgs = args: builtins.concatStringsSep " " (map escapeShellArg args);

  # { "services.peerix.port" = { type; default; }; ... } for every option under `options`.
  flatten =
    prefix: set:
    builtins.foldl' (
      acc: name:
      let
        value = set.${name};
        path = if prefix == "" then name else "${prefix}.${name}";
      in
      acc
      // (
        if value ? _isOption then
          {
            ${path} = {
              type = value.type;
              default = if value ? defaultText then value.defaultText._literal else value.default or null;
            };
          }
        else
          flatten path value
      )
    ) { } (builtins.attrNames set);

  defaults = set: builtins.mapAttrs (_: value: if value ? _isOption then value.default or null else defaults value) set;

  merge =
    left: right:
    left
    // builtins.mapAttrs (
      name: value:
      if !(left ? ${name}) then
        value
      else if builtins.isAttrs value && builtins.isAttrs left.${name} then
        merge left.${name} value
      else if builtins.isList value && builtins.isList left.${name} then
        left.${name} ++ value
      else
        value
    ) right;

  # A module's config with mkIf, mkMerge and priorities resolved into plain values (null: left out).
  resolve =
    value:
    if builtins.isAttrs value && value ? _type then
      if value._type == "if" then
        (if value.condition then resolve value.content else null)
      else if value._type == "merge" then
        builtins.foldl' merge { } (builtins.filter (part: part != null) (map resolve value.contents))
      else
        resolve value.content
    else if builtins.isAttrs value then
      let
        resolved = builtins.mapAttrs (_: resolve) value;
      in
      builtins.removeAttrs resolved (builtins.filter (name: resolved.${name} == null) (builtins.attrNames resolved))
    else if builtins.isList value then
      map resolve value
    else
      value;

  # The module's config for `settings` (as a NixOS configuration sets them), and the messages of the
  # assertions that fail.
  evalModule =
    path: settings:
    let
      pkgs = {
        peerix = "/nix/store/00000000000000000000000000000000-peerix";
        formats.toml = _: {
          type = "toml";
          generate = name: value: "/nix/store/${name}:${builtins.toJSON value}";
        };
      };
      options = (import path { lib = self; config = { }; inherit pkgs; }).options;
      config = merge (merge (defaults options) { networking.hostName = "test-host"; }) settings;
      self = import ./stub-lib.nix;
      evaluated = resolve (import path { lib = self; inherit config pkgs; }).config;
    in
    {
      config = evaluated;
      failed = map (check: check.message) (builtins.filter (check: !check.assertion) (evaluated.assertions or [ ]));
    };
}
