"""distill_plugin: knowledge distillation for Axolotl and TRL.

``plugins: [distill_plugin.DistillPlugin]`` in an Axolotl YAML enables the ``distill:`` block.
The plugin class is imported lazily so that the losses can be used without Axolotl installed.
"""

__version__ = "0.1.0"


def __getattr__(name):
    if name == "DistillPlugin":
        from .plugin import DistillPlugin

        return DistillPlugin
    raise AttributeError(name)
