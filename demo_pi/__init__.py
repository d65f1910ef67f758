"""The embedded default: a 2-D tabletop task (`tabletop`), its scripted expert and demonstrations
(`demonstrations`), the recipe that trains a small π0.5 on it from scratch (`recipe`), and `pi demo`,
which runs the policy shipped in `model/`."""
