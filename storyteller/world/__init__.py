"""StoryWorld, the book's synthetic world: scenes and pictures, its language, its data, and the judge that reads
pictures back (chapter 0)."""
