"""Running a lowered program: the executor walks the DAG and asks backends for batches
(`executor`, `ops`), questions run side by side against served models (`parallel`),
verifiers score candidates (`verifiers`, `prm`), and answers are read out of texts (`answers`)."""
