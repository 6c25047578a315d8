"""The Claude Desktop bundle's entry point: the stdio server, exactly as ``fusion-mcp`` with no arguments.

Claude Desktop runs it with ``uv run`` inside the unpacked bundle, which installs the package from the
bundled ``pyproject.toml`` first; the settings arrive as environment variables from the bundle's
``user_config`` (the API key from the system keychain).
"""

from fusion_mcp.cli.main import main

if __name__ == "__main__":
    main([])
