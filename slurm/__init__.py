"""Site profiles (``sites/*.yaml``) and batch-script templates (``templates/``) of ``rvae submit``.

Installed as the package ``pipeline.slurm`` (pyproject.toml maps this folder there), so a wheel
carries them; :mod:`pipeline.sites` and :mod:`pipeline.batch_scripts` read them as package data.
"""
