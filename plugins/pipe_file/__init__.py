"""The file pipe: messages as files in a folder both ends of a pipe can reach."""
