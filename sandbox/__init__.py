"""The sandbox image's build context (Dockerfile, runner.py), installed as `taskray.sandbox.context`.

Not imported as code: `taskray.sandbox.image` reads these files from the installed package and builds
the image from exactly them.
"""
