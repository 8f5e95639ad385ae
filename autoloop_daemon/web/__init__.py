"""The read-only web dashboard's files (served by the control server at `/`)."""
