# Just enough of nixpkgs' lib to read module.nix's option declarations offline: types become
# their names, options plain attribute sets. Anything in the module's `config` stays unevaluated.
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
  };
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
}
