"""The morning report: a fleet's files rendered as self-contained HTML or Markdown."""
