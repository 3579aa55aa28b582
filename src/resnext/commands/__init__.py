"""Sub-commands of the ``resnext`` command line, one module each."""
