"""Test yardsticks, kept out of the library as diffusers keeps ``testing_utils``: tiny seeded models built in
code (``tiny_models``), slow float64 copies of the authors' algorithms (``reference``), synthetic attention with
known regions (``synthetic``), and the in-process ComfyUI harness for integration tests.

Nothing here is imported by the nodes or the algorithms; tests, benchmarks and researchers' notebooks import it.
"""
