"""Entry point of the web demo (`python app.py`, or a Hugging Face Space)."""

if __name__ == "__main__":
    raise SystemExit("The web demo is not available yet in this version of preim3d.")
