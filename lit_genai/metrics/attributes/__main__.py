"""``python -m lit_genai.metrics.attributes accuracy CKPT``: see ``lit_genai.metrics.attributes.report``.

Shape legend: none (a command line).
"""

from lit_genai.metrics.attributes.report import main

if __name__ == "__main__":  # importing this module (tests/test_imports.py) runs nothing
    main()
