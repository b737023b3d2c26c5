      *================================================================*
      * T034 - ANNULATION (CANCELLATION OF AN EARLIER BET).            *
      *================================================================*
       01  CANCEL-FRAME.
           05  BET-ID                  PIC 9(12).
           05  REASON-CODE             PIC 9(2).
           05  REASON-TEXT             PIC X(30).
           05  REFUND                  PIC S9(7)V99 COMP-3.
           05  OPERATOR-ID             PIC 9(6) COMP.
