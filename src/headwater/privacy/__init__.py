"""Privacy: deletion requests carried out everywhere Headwater keeps data (see `headwater.privacy.deleter`)."""
