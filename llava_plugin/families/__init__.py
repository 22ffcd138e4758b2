"""Tower families; each module registers itself with `llava_plugin.registry.register_family`."""
