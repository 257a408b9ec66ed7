"""``python -m lit_genai.metrics.classifier export CKPT OUT``: see ``lit_genai.metrics.classifier.export``.

Shape legend: none (a command line).
"""

from lit_genai.metrics.classifier.export import main

if __name__ == "__main__":  # importing this module (tests/test_imports.py) runs nothing
    main()
