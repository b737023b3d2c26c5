      *================================================================*
      * T001 - OUVERTURE TERMINAL (TERMINAL START OF DAY).             *
      *================================================================*
       01  TERMINAL-START.
           05  SOFTWARE-VERSION        PIC X(8).
           05  OPERATOR-ID             PIC 9(6).
           05  SHOP-NAME               PIC X(30).
           05  CITY                    PIC X(20).
           05  POSTCODE                PIC 9(5).
           05  OPENING-FLOAT           PIC S9(7)V99 COMP-3.
           05  LAST-SHUTDOWN-TS        PIC 9(14).
           05  CABINET-TEMP            PIC S9(3)V9
                                       SIGN IS LEADING SEPARATE.
