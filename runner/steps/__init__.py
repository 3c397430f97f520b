"""What happens to one job, step by step: submit, poll and collect, and the files a job leaves."""
