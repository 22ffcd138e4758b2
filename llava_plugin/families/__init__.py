"""Tower families: each module registers itself with `@register_family` (see `base.py`, the contract);
`llava_plugin.registry` imports every module of this package, so a new family is one new module."""
