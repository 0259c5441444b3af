"""The stages of a run, probe -> score -> train-router -> route -> generate -> export, and the rules they apply."""
