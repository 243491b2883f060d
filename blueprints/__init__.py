"""The jinja2 templates of dr (cloud-init, bootstraps, service configs, reports), installed as the
package `dr_blueprints` (setup.py maps this folder into the wheel; read with importlib.resources)."""
