"""What a site keeps on disk: private atomic files and its checkpoint."""
