{
  description = "portal-env: serve RL environments from isolated runtimes as Gymnasium envs";

  # Pinned by flake.lock once `nix develop` has run where nixpkgs can be fetched.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.05";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
        "x86_64-darwin"
        "aarch64-darwin"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = [
            pkgs.python311
            pkgs.uv # installs the project and its test extra into .venv
            pkgs.ruff
            pkgs.micromamba
            pkgs.docker-client
            pkgs.git
          ];
          # PyPI wheels (numpy, torch, ale-py, mujoco) link against these at run time.
          LD_LIBRARY_PATH = pkgs.lib.optionalString pkgs.stdenv.isLinux (
            pkgs.lib.makeLibraryPath [
              pkgs.stdenv.cc.cc.lib
              pkgs.zlib
              pkgs.libGL
            ]
          );
          shellHook = ''
            export UV_PYTHON=${pkgs.python311}/bin/python3.11
            export UV_PYTHON_DOWNLOADS=never
            [ -d .venv ] || uv venv --quiet .venv
            source .venv/bin/activate
            uv pip install --quiet -e '.[test]'
          '';
        };
      });

      formatter = forAllSystems (pkgs: pkgs.nixfmt-rfc-style);
    };
}
