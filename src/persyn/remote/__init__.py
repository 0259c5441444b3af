"""Work done elsewhere: the HTTP layer, OpenAI-compatible teachers, the Batch API and Ray actors."""
