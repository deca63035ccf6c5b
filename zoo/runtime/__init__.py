"""The training and tool runtime on mmengine: the Runner and its crash-safe checkpoints, config
checks, the command-line glue, console and allocator settings.

Kept apart from the models so that ``import zoo`` stays light; nothing is imported here, import
the module you need (``zoo.runtime.engine``, ``zoo.runtime.checkpointing``, ...). Two modules
need no mmengine and serve ``zoo`` itself: ``stop`` (errors that carry their fix) and
``checkpoint_reading`` (reading weights for ``zoo.create_model``).
"""
