"""The ``alexnet`` commands, one module each: ``add_parser(commands)`` registers the command's parser
(its options, ``--help`` text and examples) and ``run(args)`` does it and returns the exit code.
They parse and print; what they do lives in the package's other folders. ``alexnet.cli`` lists them."""
