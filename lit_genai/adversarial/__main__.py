"""``python -m lit_genai.adversarial compare OUT.png LABEL=robustness.json ...`` (see ``command.main``)."""

from lit_genai.adversarial.command import main

if __name__ == "__main__":
    main()
