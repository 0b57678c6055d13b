"""The pure core: references, platforms, OCI types, tag selection, spec types, plans and
differential rules. No I/O and no aiohttp or yaml here (tests/test_layers.py checks).
"""
