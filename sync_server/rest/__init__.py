"""The Twilio Sync v1 REST API: Services, Documents and Document Permissions."""
