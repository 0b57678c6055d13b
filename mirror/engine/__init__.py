"""The orchestration: resolve images, discover referrers, sync (registry -> cache -> bundle or
registry) and push (bundle or cache -> registry)."""
