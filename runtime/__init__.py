"""The runtime: the fixed-tick loop, input mapping, the moderngl display and the ``rollingworld`` CLI."""
